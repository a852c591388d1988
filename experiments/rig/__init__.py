"""The training path: config, corpus, tokenizer, model, the training loop and the recorder.

Every module here but `malloc` and `schema` is hashed into each run key (`experiments.store.runs.TRAINING_MODULES`):
a code change here retrains the store unless it is declared recording-preserving
(`experiments/store/equivalences.json`). `malloc` only tells glibc to keep freed memory; it changes no bit
(tests/rig/test_malloc.py). `schema` reaches a run only through the resolved config, which the key hashes.
"""

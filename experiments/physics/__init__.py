"""The physics of one AdamW step on bf16 weights: the arithmetic (`adam`), the machine's kernel laws (`laws`),
bit-exact replay of recordings (`verify`), the update's decomposition (`decomposition`) and thrust (`thrust`).
"""

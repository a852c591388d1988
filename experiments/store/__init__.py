"""The run store: content-addressed runs (`runs`), the reader (`recording`), derived results (`derived`), the
training fingerprint and its declared equivalences (`fingerprint`, `equivalence`), and Dask training (`cluster`).
"""

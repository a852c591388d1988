"""The bf16 lattice: coordinates, displacements and lifecycles (`lifecycle`), black holes (`blackholes`),
coarsening (`coarsening`), real checkpoints (`checkpoints`, `census`) and black-hole genesis (`genesis`)."""

"""The cloud of dead rows as a body: geometry (centroid, radii, populations), the shell and the epochs of a run."""

"""The `lab` command: one entry point over the science (`experiments`) and the publishing machinery (`publish`)."""

"""Reading and writing files: NIfTI volumes, manifests, run directories."""

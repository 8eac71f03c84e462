"""EDM-compatible networks: EDMPrecond (precond.py) around SongUNet (DDPM++/NCSN++, songunet.py) or DhariwalUNet (ADM,
dhariwal.py), with EDM's parameter names so EDM checkpoints load with strict=True. Leaves: they import nothing of ours
but their layers (layers.py)."""

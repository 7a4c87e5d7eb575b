"""``python -m effdrop_triton.train`` (and ``torchrun ... -m effdrop_triton.train``): the ``effdrop-train`` command."""

from effdrop_triton.train.cli import cli

if __name__ == "__main__":
    cli()

"""`python -m sslocr_jax.export --checkpoint=DIR --output=FILE.safetensors` (see export/cli.py)."""

from sslocr_jax.export import cli

if __name__ == "__main__":
  cli.main()

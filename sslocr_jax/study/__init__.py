"""The pretraining study (`python -m sslocr_jax.study`): plan.py expands the study config
into runs, runner.py runs them as subprocesses and records the manifest, report.py writes
docs/results.md. The command line is in __main__.py."""

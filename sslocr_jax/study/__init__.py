"""The pretraining study (`python -m sslocr_jax.study`, docs/study.md): plan.py expands the
study config into cells and runs (with each cell's config hash and the time estimate),
runner.py runs them as subprocesses and commits each finished cell's result, stats.py holds
the paired t interval and the verdicts, report.py regenerates docs/results.md from the
committed results. The command line is in __main__.py."""

"""The GPU check (`python -m bench.gpu_check`): one module per section of its table. See report.py for the command."""

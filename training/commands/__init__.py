"""Offline subcommands of ``sat-seg`` (data, training, calibration, evaluation, export)."""

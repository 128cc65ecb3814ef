"""The paired-data format that training and the evaluation share: prompt files (JSON Lines of
{source, target, prompt}), the dataset manifest that says how the pairs were made, and the toy set's palette.
It imports nothing from `training/` or `evaluation/`."""

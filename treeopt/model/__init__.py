"""The model side (needs torch): loading a model with its heads, calibration prompts,
profiling heads, measuring latency, the optuna study, training heads.
"""

"""A defences spec small enough to run inline in a test: shared by the defences stage tests
and the CUDA path's check of the same stage."""

TINY = {
    "experiment": "defences_tiny", "seed": 0,
    "dataset": {"name": "digits", "pool_size": 600, "train_size": 16},
    "model": {"name": "mlp", "hidden": [16]},
    "pretraining": {"epochs": 3, "lr": 0.05, "batch_size": 64},
    "training": {"epochs": 1, "lr": 0.001, "batch_size": 128, "momentum": 0.0},
    "forget": {"kind": "single", "count": 2},
    "unlearning": [{"method": "gradient_ascent", "lr": 0.001}],
    "defences": {"attack": "recovery", "max_requests": 2,
                 "recovery": {"iterations": 3, "restarts": 1},
                 "label_inference": {"shares": [1.0], "classes": [0, 1, 2], "boxes": ["white"],
                                     "scores": ["prob"],
                                     "probes": {"box": "white", "probes_per_class": 2,
                                                "max_calls": 2, "iterations_per_call": 5}},
                 "sweeps": [{"defence": "obfuscation", "strengths": [0.0, 1.0e-2]},
                            {"defence": "pruning", "strengths": [0.5]},
                            {"defence": "pruning", "strengths": [0.0, 0.9],
                             "attack": "label_inference"},
                            {"defence": "label_only", "strengths": [None],
                             "attack": "label_inference"}]},
}

"""Quickstart: a small FCN-8s on the synthetic phantom; a few minutes on 2 CPU cores.

The phantom dataset is built automatically on first use (no network):

  python main.py --config configs/quickstart.py --workdir runs/quickstart
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = 'ircad/phantom'
    config.train_split = default.patients(1, 6)
    config.eval_split = default.patients(7, 8)
    config.image_size = 128
    config.width_multiplier = 0.125
    config.batch_size = 8
    config.learning_rate = 1e-3
    config.warmup_steps = 50
    config.num_train_steps = 600
    config.log_every_steps = 20
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    config.shuffle_buffer = 256
    config.profile_steps = 0
    return config

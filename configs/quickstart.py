"""Quickstart: a narrow FCN-8s on the synthetic phantom; about 5 minutes on 2 CPU cores.

The phantom dataset is built automatically on first use (no network). Reaches a liver
Dice above 0.9 on the held-out phantom patients 7 and 8:

  python main.py --config configs/quickstart.py --workdir runs/quickstart
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = 'ircad/phantom'
    config.train_split = default.patients(1, 6)
    config.eval_split = default.patients(7, 8)
    config.image_size = 256  # the phantom's own size
    config.width_multiplier = 0.0625  # VGG16 at 1/16 width: 4..32 channels, fc6/fc7 256
    config.augment = 'none'
    config.batch_size = 8
    config.learning_rate = 2e-3
    config.num_train_steps = 900
    config.log_every_steps = 20
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.shuffle_buffer = 512
    config.profile_steps = 0
    return config

"""Every knob of fcn-jax, with the defaults for FCN-8s on the real IRCAD data.

Variants derive from this file and change only what differs. Run:

  python main.py --config configs/default.py --workdir runs/default

Any knob can be overridden on the command line, e.g.
`--config.image_size=256 --config.batch_size=4`.
"""

import ml_collections


def patients(first: int, last: int) -> str:
    """TFDS split string for patients first..last (`patient_1+patient_2+...`)."""
    return '+'.join(f'patient_{i}' for i in range(first, last + 1))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Data: a TFDS name (`ircad/real` or `ircad/phantom`), where it is, and patient folds.
    config.dataset = 'ircad/real'
    config.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS's default
    config.train_split = patients(1, 15)
    config.eval_split = patients(16, 20)
    config.image_size = 512  # slices are resized to image_size x image_size; multiple of 32
    config.hu_window = (-100.0, 400.0)  # HU clipped to this window, then scaled to [0, 1]
    config.input_channels = 1  # 1, or 3 with the slice replicated (for RGB-pretrained weights)
    config.augment = 'none'  # none | flips | strong (both flip left-right: see README)
    config.shuffle_buffer = 1024
    config.prefetch = 2  # batches prefetched to the devices

    # Model.
    config.model = 'fcn8s'  # fcn32s | fcn16s | fcn8s
    config.width_multiplier = 1.0  # 1.0: the paper's VGG16 widths
    config.batch_norm = False  # the paper has none
    config.dropout_rate = 0.5
    config.learn_final_upsample = False  # final upsampling fixed bilinear, as in the paper
    config.init_from = ''  # torchvision-layout VGG16 weights (.safetensors or .npz); '' = random
    config.half_precision = False  # bfloat16 compute, float32 params and optimiser state

    # Optimisation.
    config.optimizer = 'adam'  # adam | sgd (with momentum, as in the paper)
    config.learning_rate = 3e-4
    config.momentum = 0.9  # sgd only
    config.weight_decay = 0.0  # decoupled (AdamW) for adam, L2 for sgd
    config.schedule = 'cosine'  # cosine | constant (both after a linear warmup)
    config.warmup_fraction = 0.05  # linear warmup over this fraction of num_train_steps
    config.batch_size = 8  # global, over all devices and hosts
    config.num_train_steps = 20_000
    config.loss = 'ce'  # ce | ce_dice
    config.class_weights = (1.0, 1.0, 1.0, 1.0)  # background, liver, bone, kidney
    config.dice_weight = 1.0  # ce_dice only

    # Inference (`--mode=evaluate` and `--mode=predict`); may differ from training.
    config.tta = False  # average predictions over left-right and up-down flips
    config.lcc = False  # keep the largest connected component (liver) / two (kidneys)
    config.surface_metrics = True  # ASSD and HD95 in --mode=evaluate (the slower metrics)

    # Loop: logging, evaluation and checkpoints.
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # latest checkpoints kept; the best by eval mean Dice is kept apart
    config.num_image_summaries = 4  # eval slices shown with ground truth and prediction overlays
    config.profile_steps = 5  # steps traced by clu's Profile action (0: none)
    config.seed = 0
    return config

"""What `main.py --mode` runs: train, evaluate, predict, iter."""

import ml_collections

from fcn_jax import config_checks, input_pipeline, predict, train, volume_eval


def run_train(config: ml_collections.ConfigDict, workdir: str) -> None:
    train.train_and_evaluate(config, workdir)


def run_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                 checkpoint: str = 'best') -> dict:
    """Per-patient volume metrics of a checkpoint (see `fcn_jax.volume_eval`)."""
    return volume_eval.run(config, workdir, checkpoint=checkpoint)


def run_predict(config: ml_collections.ConfigDict, workdir: str, *, input_path: str,
                output: str, overwrite: bool = False, checkpoint: str = 'best',
                config_name: str = '') -> dict:
    """Segments one CT series (see `fcn_jax.predict`)."""
    return predict.run(config, workdir, input_path=input_path, output=output,
                       overwrite=overwrite, checkpoint=checkpoint, config_name=config_name)


def run_iter(config: ml_collections.ConfigDict) -> None:
    """Prints one training batch: shapes, dtypes, value ranges and the class histogram."""
    config_checks.validate(config)
    input_pipeline.load_builder(config)
    batch = next(iter(input_pipeline.train_iterator(config)))
    print(input_pipeline.describe_batch(batch))

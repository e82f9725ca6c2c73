"""What `main.py --mode` runs: train, evaluate, iter."""

import jax
import ml_collections

from fcn_jax import checkpointing, config_checks, input_pipeline, train


def run_train(config: ml_collections.ConfigDict, workdir: str) -> None:
    train.train_and_evaluate(config, workdir)


def run_evaluate(config: ml_collections.ConfigDict, workdir: str, *, checkpoint: str = 'best') -> dict:
    """Evaluates a checkpoint of `workdir` on `config.eval_split`; prints and returns the metrics."""
    config_checks.validate(config)
    input_pipeline.load_builder(config)
    model = train.create_model(config)
    state = train.create_train_state(jax.random.PRNGKey(config.seed), config, model)
    checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints, create=False)
    state = checkpoints.restore(state, checkpoint)
    _, p_eval, p_predict = train.pmapped_steps(config)
    summary, _ = train.evaluate(state, config, p_eval, p_predict)
    print(f'step {int(state.step)}, split {config.eval_split}:')
    for key, value in summary.items():
        print(f'  {key:<16} {value:.4f}')
    return summary


def run_iter(config: ml_collections.ConfigDict) -> None:
    """Prints one training batch: shapes, dtypes, value ranges and the class histogram."""
    config_checks.validate(config)
    input_pipeline.load_builder(config)
    batch = next(iter(input_pipeline.train_iterator(config)))
    print(input_pipeline.describe_batch(batch))


"""fcn-jax: train, evaluate or inspect FCNs on IRCAD CT slices.

  python main.py --config configs/quickstart.py --workdir runs/quickstart
  python main.py --config configs/fcn8s.py --workdir runs/fcn8s
  python main.py --config configs/fcn8s.py --workdir runs/fcn8s --mode evaluate
  python main.py --config configs/quickstart.py --workdir runs/quickstart --mode iter
  python main.py --config configs/fcn8s.py --workdir runs/fcn8s --mode predict \
      --input patient/PATIENT_DICOM --output predictions/patient

Config values can be overridden: `--config.image_size=256 --config.batch_size=4`.
"""

from absl import app, flags, logging
from clu import platform
import jax
from ml_collections import config_flags
import tensorflow as tf

from fcn_jax import cli_errors, log_filters, modes

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, TensorBoard summaries and config.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict', 'iter'],
                  'train: train and evaluate (resumes from the latest checkpoint); '
                  'evaluate: per-patient volume metrics of a checkpoint; '
                  'predict: segment a CT series; iter: print one input batch.')
flags.DEFINE_string('checkpoint', 'best', 'evaluate/predict: `latest`, `best` or a step number.')
flags.DEFINE_string('input', None, 'predict: a folder or zip with one CT series, or an IRCAD '
                    'patient folder.')
flags.DEFINE_string('output', None, 'predict: output folder (masks, overlays, summary.json).')
flags.DEFINE_bool('overwrite', False, 'predict: replace an existing output folder.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-host: address:port of process 0 (jax.distributed.initialize).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/fcn8s.py.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    log_filters.quiet_library_logs()
    # TensorFlow only feeds data: keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], 'GPU')
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    logging.info('JAX process %d of %d, local devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    platform.work_unit().set_task_status(f'process {jax.process_index()}/{jax.process_count()}')
    platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, 'workdir')
    with cli_errors.one_line_errors():
        if FLAGS.mode == 'train':
            modes.run_train(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == 'evaluate':
            modes.run_evaluate(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
        elif FLAGS.mode == 'predict':
            if not FLAGS.input or not FLAGS.output:
                raise app.UsageError('--mode=predict needs --input and --output', exitcode=2)
            modes.run_predict(FLAGS.config, FLAGS.workdir, input_path=FLAGS.input,
                              output=FLAGS.output, overwrite=FLAGS.overwrite,
                              checkpoint=FLAGS.checkpoint,
                              config_name=config_flags.get_config_filename(FLAGS['config']))
        else:
            modes.run_iter(FLAGS.config)


if __name__ == '__main__':
    app.run(main)

"""Every registered model and several datasets through the whole path, on tfds mock data."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx
from PIL import Image

import input_pipeline
from mlp.core import build, checkpoint, configuration, models, train
from mlp.core.errors import UserError
from mlp.reader import export, predict
from mlp.tools import sweep


@pytest.mark.parametrize('model', sorted(models.REGISTRY))
def test_every_model_trains_resumes_evaluates_predicts_and_exports(tmp_path, mock_mnist, model):
  config = tiny_config(tmp_path, {'model': model, 'optim.num_epochs': 2})
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  configuration.assign(config, 'optim.num_epochs', 1)
  train.train_and_evaluate(config, tmp_path / 'run')
  configuration.assign(config, 'optim.num_epochs', 2)
  resumed = train.train_and_evaluate(config, tmp_path / 'run')
  assert resumed == {**straight, 'epochs': resumed['epochs']}

  evaluated = train.evaluate_checkpoint(tmp_path / 'run')
  assert evaluated['test_accuracy'] == resumed['test_accuracy']
  _, info, restored_model, params = checkpoint.restore_for_inference(tmp_path / 'run')
  images = np.random.default_rng(0).integers(0, 256, (5, *info.image_shape), np.uint8)
  probabilities = predict.classifier(restored_model, params, info)(images)
  exported = export.export(restored_model, params, info.image_shape)
  np.testing.assert_allclose(exported.call(images), probabilities, atol=1e-5)


@pytest.mark.parametrize(
  ('name', 'shape', 'is_digits'),
  [('fashion_mnist', (28, 28, 1), False), ('cifar10', (32, 32, 3), False)],
)
def test_dataset_shapes_and_classes_come_from_tfds(
  tmp_path, mock_dataset, capsys, name, shape, is_digits
):
  mock_dataset(name)
  overrides = {'data.name': name, 'augment.rotation': 10.0, 'optim.num_epochs': 1}
  for model in sorted(models.REGISTRY):
    workdir = tmp_path / model
    config = tiny_config(tmp_path, {**overrides, 'model': model})
    train.train_and_evaluate(config, workdir)
    configuration.assign(config, 'optim.num_epochs', 2)
    result = train.train_and_evaluate(config, workdir)  # Resumed from epoch 1.
    assert [r['epoch'] for r in result['epochs']] == [1, 2]
    info = input_pipeline.DatasetInfo.load(workdir)
    assert info.image_shape == shape and info.num_classes == 10
    assert info.is_digits == is_digits
    assert json.loads((workdir / 'dataset.json').read_text())['name'] == name
    assert train.evaluate_checkpoint(workdir)['test_accuracy'] == result['test_accuracy']
    _, _, restored, params = checkpoint.restore_for_inference(workdir)
    assert export.export(restored, params, shape).in_avals[0].shape[1:] == shape
    photo = tmp_path / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 60, 3), np.uint8)).save(photo)
    assert predict.run(workdir, [str(photo)], 'json', None) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert answer['name'] == info.class_names[answer['class']]
    assert len(answer['probabilities']) == 10
    for picture in ('confusion_matrix.png', 'misclassified.png'):
      assert (workdir / picture).stat().st_size > 1000
    with config.unlocked():
      config.sweep = {'grid': {'optim': {'learning_rate': (1e-3, 3e-3)}}, 'random': {}}
      config.sweep.update(num_random=0, seed=0, max_parallel=2)
    records = [sweep.run(config, tmp_path / f'sweep-{model}')]
    lines = (tmp_path / f'sweep-{model}' / 'sweep.jsonl').read_text().splitlines()
    assert [json.loads(line)['trials_in_program'] for line in lines] == [2, 2]
    assert 0 <= records[0]['val_accuracy'] <= 1


class WithBatchNorm(nnx.Module):
  """A model with running statistics, which the functional step does not carry."""

  FIELDS = {}

  def __init__(self, fields, image_shape, num_classes, *, dtype, rngs):
    self.norm = nnx.BatchNorm(int(np.prod(image_shape)), rngs=rngs)
    self.out = nnx.Linear(int(np.prod(image_shape)), num_classes, rngs=rngs)

  def __call__(self, images, *, key=None):
    return self.out(self.norm(images.reshape(images.shape[0], -1)))


def test_a_model_with_state_besides_parameters_is_refused(tmp_path, monkeypatch):
  monkeypatch.setitem(models.REGISTRY, 'batchnorm', WithBatchNorm)
  config = tiny_config(tmp_path)
  with config.unlocked():
    config.batchnorm = {}
  config.model = 'batchnorm'
  info = input_pipeline.DatasetInfo('mnist', (28, 28, 1), tuple('0123456789'))
  with pytest.raises(UserError, match="'batchnorm' holds state besides parameters"):
    build.build_model(config, info)

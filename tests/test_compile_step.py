"""torch.compile of the MDP training step: the whole step (mixing, prototypes, sparse coding, memory update) is
captured as one graph without a break (``fullgraph=True``), and its losses over a few optimizer steps are those of
eager mode. The graph is run by AOTAutograd's eager backend here, which checks capture and autograd without the
minutes Inductor's code generation takes on a CPU; Inductor's speed against eager is measured by the benchmark."""

import json

import pytest
import torch
from test_pretrain_run import TINY_SIZES, synthetic_root  # noqa: F401  (fixture)
from torch.utils.data import DataLoader

from training.config import load_config
from training.engine import distributed
from training.pretraining import model as pretraining_model
from training.pretraining import stages as pretraining_stages

STEPS = 3
CPU = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _demo_config(synthetic_root, *overrides: str):
    """The demo recipe on the tiny synthetic benchmark, with the worker-side photometric the trainer resolves."""
    sizes = json.dumps(TINY_SIZES)
    base = [f"data.synthetic_root={synthetic_root}", f"data.synthetic_sizes={sizes}", "data.photometric_on=worker"]
    return load_config("demo", [*base, *overrides])


def _losses(cfg, label_space, batches, compiled: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    method, model = pretraining_model.build_model(cfg, label_space, CPU)
    if compiled:
        model = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for batch in batches:
        torch.manual_seed(1)  # the same mixing draws in both modes
        out = model(batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(torch.stack([out[key].detach() for key in sorted(out) if key.startswith("loss")]))
    return losses


def test_the_mdp_step_compiles_as_one_graph_and_matches_eager(synthetic_root):  # noqa: F811
    cfg = _demo_config(synthetic_root, "data.crop_size=48", "data.base_size=64")
    label_space, stages = pretraining_stages.build_stages(cfg, CPU)
    torch.manual_seed(2)
    batches = [batch for _, batch in zip(range(STEPS), DataLoader(stages[0].dataset, batch_size=4))]
    eager = _losses(cfg, label_space, batches, compiled=False)
    compiled = _losses(cfg, label_space, batches, compiled=True)
    for step, (expected, actual) in enumerate(zip(eager, compiled)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=f"step {step}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_compiled_step_still_refuses_label_ids_out_of_range(synthetic_root):  # noqa: F811
    cfg = _demo_config(synthetic_root, "train.compile=true")
    label_space, _ = pretraining_stages.build_stages(cfg, CPU)
    _, model = pretraining_model.build_model(cfg, label_space, CPU)
    image = torch.zeros(2, 3, 32, 32)
    batch = {"image": image, "image_k": image, "mask": torch.full((2, 32, 32), label_space.num_classes)}
    batch["dataset_id"] = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"holds ids in \[342, 342\], but the label space has 342 classes"):
        model(batch)  # checked eagerly: the compiled graph has no host-side check

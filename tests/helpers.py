"""Helpers shared by the test modules."""

import torch
import torch.nn.functional as F

from seeking import ConsecutiveDecrease, Motivator


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def motivated_steps(base, large, sync, *, steps, shape, batchnorm="separate"):
    """Train the pair for ``steps`` batches of random ``shape`` images (k = 1); returns the finished Motivator."""
    motivator = Motivator(base, large, ConsecutiveDecrease(k=1), sgd(base), sgd(large), sync=sync, batchnorm=batchnorm)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(*shape, generator=gen), torch.randint(0, 10, (shape[0],), generator=gen)
        model, opt = motivator.select()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        motivator.observe(loss)
    motivator.finish()
    return motivator

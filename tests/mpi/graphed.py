"""Run under mpiexec by tests/test_trainer_graphed.py: data-parallel training on sim with the
step recorded and replayed (Trainer(cuda_graph=True): forward-backward and update replayed,
the bucketed all-reduce between them) gives the same parameters on every rank as the eager
data-parallel step, to the bit.

    graphed.py <steps>
"""
import sys

import numpy as np

import cupycnn
from cupycnn import distributed
from cupycnn.data import Loader, Normalize, Synthetic
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential
from cupycnn.optim import Adam
from cupycnn.train import Trainer


def run(ctx, cuda_graph, epochs):
    cupycnn.manual_seed(0)
    model = Sequential(Conv2D(3, 4, 3, padding=1, bias=False), BatchNorm2D(4, relu=True),
                       MaxPool2D(2), Dropout(0.25), Flatten(), Dense(4 * 4 * 4, 4))
    optimizer = Adam(model.parameters(), lr=0.01)
    ctx.broadcast_parameters(model)
    trainer = Trainer(model, optimizer, distributed=ctx, progress=False, cuda_graph=cuda_graph)
    data = Synthetic(48, shape=(8, 8, 3), num_classes=4, seed=1)
    loader = Loader(data, batch_size=8, rank=ctx.rank, world_size=ctx.size, prefetch=False,
                    transform=Normalize((0.5,) * 3, (0.25,) * 3), seed=2)
    trainer.fit(loader, epochs=epochs)
    return model.state_dict(), trainer


def main():
    epochs = int(sys.argv[1])
    cupycnn.use("sim")
    ctx = distributed.init()
    eager, _ = run(ctx, False, epochs)
    graphed, trainer = run(ctx, True, epochs)
    same = all(np.array_equal(eager[k], graphed[k]) for k in eager)
    everyone = ctx.allgather((same, trainer.graphed.replayed_steps,
                              {k: v.tobytes() for k, v in graphed.items()}))
    if ctx.rank == 0:
        ranks_agree = all(e[2] == everyone[0][2] for e in everyone)
        print(f"OK graphed={all(e[0] for e in everyone)} replayed={everyone[0][1]} "
              f"ranks_agree={ranks_agree} ranks={ctx.size}", flush=True)


if __name__ == "__main__":
    main()

"""The runtime roles, and which state each one writes.

- serve (`foryou.http`, over `foryou.engine.Engine` with role "serve"): answers requests. It appends
  the durable records (events, served rows), moves the requesting users' interest state, and runs the
  log follower (`foryou.follower`), the one writer of the item aggregates. Its model is a replica
  (`foryou.learning.replica`) of what the trainer publishes; it never trains.
- train (`train.py`, `foryou train`): a process of its own that reads the log (events, served rows,
  the refresh table, the catalogue's changes) in order, trains, and publishes model versions. The
  one writer of the learned model.
- `supervise.py`: the serve role's child trainer, started with it and restarted if it dies, so that
  `foryou serve` stays one command.

All in one (`Engine` with role "all": tests, `simulate`, `evaluate`, `load`, and `serve` with
`learning.trainer = "inline"`) runs the same parts in one process, stepped in order, so that a seed
gives the same run.
"""

from foryou.roles.supervise import TrainerProcess
from foryou.roles.train import Trainer

__all__ = ["Trainer", "TrainerProcess"]

"""Per-call sampling state of a pipeline: what diffusers pipelines keep on ``self`` (``_guidance_scale``,
``_num_timesteps``) and step callbacks read or change, kept here per call and per thread instead.

diffusers' ``StableDiffusionPipeline.__call__`` writes ``self._guidance_scale`` and ``self._num_timesteps`` and its
loop reads them back, so a ``callback_on_step_end`` can change the guidance of the remaining steps
(``pipe._guidance_scale += 1``). On one shared ``self`` two threads sampling from the same pipeline would overwrite
each other's values. Here each call pushes its own :class:`PipelineCallState` on a stack that belongs to the pipeline
*and* the calling thread; the pipeline's properties read the top of that stack, and after the call the last state of
the thread stays readable (``pipe.guidance_scale`` after a call is what its callbacks left). Nested calls (a callback
that samples from the same pipeline) get their own state too.

Only the standard library: this module is bundled into the remote code of a pushed pipeline.
"""

import threading
import weakref
from dataclasses import dataclass
from typing import Dict, List


@dataclass
class PipelineCallState:
    """What one ``__call__`` of a pipeline exposes to its step callbacks.

    Attributes:
        guidance_scale: classifier-free guidance weight; the loop reads it at every step.
        num_timesteps: the number of denoising steps of the call (``len(scheduler.timesteps)``).
        conditional: whether the call samples with a condition (guidance needs one).
    """

    guidance_scale: float = 1.0
    num_timesteps: int = 0
    conditional: bool = False


class _ThreadStacks(threading.local):
    """Per thread: pipeline -> its stack of running calls, and the state of its last finished call."""

    def __init__(self):
        self.running: "weakref.WeakKeyDictionary[object, List[PipelineCallState]]" = weakref.WeakKeyDictionary()
        self.last: "weakref.WeakKeyDictionary[object, PipelineCallState]" = weakref.WeakKeyDictionary()


_STACKS = _ThreadStacks()


def current_call_state(pipe) -> PipelineCallState:
    """The state of ``pipe``'s innermost running call in this thread, else of its last call in this thread, else a
    fresh default state (guidance 1, no timesteps)."""
    running = _STACKS.running.get(pipe)
    if running:
        return running[-1]
    last: Dict = _STACKS.last
    if pipe not in last:
        last[pipe] = PipelineCallState()
    return last[pipe]


class pipeline_call:
    """Context manager for one call of ``pipe``: ``with pipeline_call(pipe, state):`` makes ``state`` the one the
    pipeline's properties read in this thread until the block ends; afterwards it stays the thread's last state."""

    def __init__(self, pipe, state: PipelineCallState):
        self.pipe, self.state = pipe, state

    def __enter__(self) -> PipelineCallState:
        _STACKS.running.setdefault(self.pipe, []).append(self.state)
        return self.state

    def __exit__(self, *exc) -> None:
        stack = _STACKS.running[self.pipe]
        stack.pop()
        if not stack:
            del _STACKS.running[self.pipe]
        _STACKS.last[self.pipe] = self.state

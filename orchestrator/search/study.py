"""The Optuna study of a search: the journal file, the sampler, and the trial bookkeeping.

The study is the single source of truth. It lives in ``RESULTS/<experiment>/_search/
study.journal`` (Optuna's JournalStorage on a file, append-only, so a killed process leaves at
most one half-written last line: Optuna skips it when reading, but the next append would join
it into one unreadable line, so :func:`drop_partial_record` cuts it off first, under the
experiment's lock). A journal damaged otherwise is refused in one line. Finished trials
(complete, pruned, or failed with an error) count towards the budget; a trial left running by
a stopped search is marked ``interrupted`` and its parameters are enqueued, so ``--resume``
reruns that configuration. On resume the sampler's seed is advanced by the number of trials
the study holds, so a seeded search repeats its first trials on a fresh start and never
replays them on a resume.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from orchestrator.store.tables import Results

if TYPE_CHECKING:  # annotations only: importing the search spec validates objectives
    from orchestrator.search.spec import SearchPlan

__all__ = ["INTERRUPTED", "SEARCH_DIR", "SearchStateError", "drop_partial_record", "finished",
           "make_sampler", "open_study", "recover_stale", "search_dir"]

SEARCH_DIR = "_search"
INTERRUPTED = "interrupted"


class SearchStateError(RuntimeError):
    """The results directory holds a search that this command may not silently continue."""


# --- the study -------------------------------------------------------------------------------

def search_dir(results: Results) -> str:
    if not results.location.local:
        raise SearchStateError("tune keeps its Optuna journal beside the results and needs a "
                               "local or mounted --results directory, not a URI")
    return results.location.path(results.experiment, SEARCH_DIR)


def open_study(plan: SearchPlan, results: Results, resume: bool):
    """The study on ``_search/study.journal``: created fresh, or continued with --resume."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = search_dir(results)
    path = os.path.join(folder, "study.journal")
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    if resume and not existed:
        # Checked before anything is made: a mistyped --results must not start a new study.
        raise SearchStateError(
            f"--resume: nothing to resume: {results.location.uri} holds no study of "
            f"{results.experiment!r}; run without --resume to start one")
    os.makedirs(folder, exist_ok=True)
    name = plan.base.experiment
    search = plan.search
    try:  # the storage reads the whole journal as it opens
        storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        if existed:
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.trials
    except (ValueError, KeyError) as err:  # JSONDecodeError, or no study record at all
        if not existed:
            raise
        text = " ".join(str(err).split()).strip("'")
        raise SearchStateError(
            f"{path}: damaged study journal ({type(err).__name__}: {text}); move {folder} "
            "aside to start the search afresh, or use another --results directory") from None
    if existed:
        if trials and not resume:
            raise SearchStateError(
                f"{folder} already holds a search with {len(trials)} trials; pass "
                "--resume to continue it, or choose another --results directory")
        old = study.user_attrs.get("fingerprint")
        if old and old != search.fingerprint():
            raise SearchStateError(
                "the search space, objective or targets changed since this study began; "
                "continue with the original spec or start in another --results directory")
    else:
        study = optuna.create_study(study_name=name, storage=storage,
                                    directions=search.directions)
        study.set_user_attr("fingerprint", search.fingerprint())
        study.set_user_attr("metrics", [m.name for m in search.metrics])
    return study


def drop_partial_record(results: Results) -> int:
    """Cut a half-written last line off the journal (a process killed while appending), so
    the next append starts a line of its own; the bytes dropped. Only under the lock."""
    path = os.path.join(search_dir(results), "study.journal")
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        end = size
        while end > 0:  # back to the last newline, a block at a time
            start = max(0, end - 65536)
            fh.seek(start)
            cut = fh.read(end - start).rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end == size:
            return 0
        fh.truncate(end)
    return size - end


def make_sampler(plan: SearchPlan, n_existing: int):
    import optuna

    s = plan.search.sampler
    # A fresh search starts from the spec's seed; a resumed one advances it by the trials
    # already asked, so it does not replay their random draws.
    seed = s.seed + 7919 * n_existing
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE counts the study's finished trials itself when deciding whether it is past startup.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials,
                                      multivariate=s.multivariate,
                                      constant_liar=plan.search.concurrency > 1)


def finished(trial) -> bool:
    """Counts towards the budget: complete, pruned, or failed with an error (not interrupted)."""
    import optuna

    state = trial.state
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return state == optuna.trial.TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)


def recover_stale(study) -> int:
    """Trials left RUNNING by a killed search: mark them interrupted, enqueue their params."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.RUNNING]
    storage = study._storage
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"rerun_of": t.number})
    return len(stale)


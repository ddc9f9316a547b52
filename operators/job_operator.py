"""Operators whose work runs as a :class:`~..gagavatar_blender.jobs.Job`.

Interactive sessions: the job runs in a worker thread; a modal timer shows its progress in the
status bar, the mouse cursor and the sidebar, Esc cancels it, and the Blender data is made on the
main thread when it is done. Background mode (``blender -b``, the bpy module) or
``synchronous=True``: the job runs to completion inside ``execute``.
"""
import traceback

import bpy

from ..gagavatar_blender import deps, jobs

TIMER_S = 0.2

_modal: list = []
"""The running modal operators' ``(job, window_manager, timer)``: :func:`unregister` stops them."""


def finish(job, report, apply):
    """Report a finished job's outcome; ``apply(result)`` makes the Blender data on success.

    Returns the operator's return set. A failed or cancelled job leaves the scene untouched.
    """
    from ..engine.errors import GAGAvatarError
    if isinstance(job.error, GAGAvatarError):
        report({"WARNING"} if job.cancelled else {"ERROR"}, str(job.error))
        return {"CANCELLED"}
    if job.error is not None:
        print(job.error_details)
        report({"ERROR"}, f"{job.label} failed: {type(job.error).__name__}: {job.error} (details in the console)")
        return {"CANCELLED"}
    return apply(job.result)


class JobOperator:
    """Mixin for operators: subclasses define ``make_job(context) -> Job`` and ``apply(context, result) -> set``."""

    synchronous: bpy.props.BoolProperty(
        name="Synchronous", default=False, options={"HIDDEN", "SKIP_SAVE"},
        description="Run to completion before returning (always so in background mode)")

    @classmethod
    def poll_dependencies(cls) -> bool:
        """False (with the missing packages named) while the engine's Python packages are absent."""
        absent = deps.missing()
        if absent:
            cls.poll_message_set(f"Missing Python packages ({', '.join(absent)}): see the add-on preferences")
            return False
        return True

    @classmethod
    def poll_job(cls) -> bool:
        """False (with a message) while another job runs."""
        running = jobs.active()
        if running is not None:
            cls.poll_message_set(f"Wait for '{running.label}' to finish, or cancel it (Esc)")
            return False
        return True

    def execute(self, context):
        from ..engine.errors import GAGAvatarError
        inline = bpy.app.background or self.synchronous or context.window is None
        try:
            job = self.make_job(context)
            if inline:
                job.run_inline()
            else:
                job.start()
        except GAGAvatarError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        except Exception as err:  # an unexpected failure before the work ran: one line, details in the console
            print(traceback.format_exc())
            self.report({"ERROR"}, f"{self.bl_label} failed: {type(err).__name__}: {err} (details in the console)")
            return {"CANCELLED"}
        if inline:
            return finish(job, self.report, lambda result: self.apply(context, result))
        self._job = job
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        _modal.append((job, wm, self._timer))
        wm.modal_handler_add(self)
        wm.progress_begin(0, 100)
        self._show(context)
        return {"RUNNING_MODAL"}

    def _show(self, context) -> None:
        job, status = self._job, context.window_manager.gagavatar_job
        status.running, status.label, status.progress = True, job.status, 100.0 * job.fraction
        context.window_manager.progress_update(int(100 * job.fraction))
        if context.workspace is not None:
            context.workspace.status_text_set(f"{job.label}: {job.status} ({100 * job.fraction:.0f}%) - Esc to cancel")
        for area in context.screen.areas if context.screen else ():
            if area.type == "VIEW_3D":
                area.tag_redraw()

    def _end(self, context) -> None:
        entry = next((e for e in _modal if e[0] is self._job), None)
        if entry is not None:  # not already stopped by unregister()
            _modal.remove(entry)
            _stop(*entry)
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.done:
            self._show(context)
            return {"RUNNING_MODAL"}
        self._end(context)
        return finish(job, self.report, lambda result: self.apply(context, result))

    def cancel(self, context):
        """Blender is cancelling the operator (window closed): stop the job."""
        self._job.cancel()
        self._end(context)


def _stop(job, wm, timer) -> None:
    """Cancel a modal operator's job (if still running) and remove its timer and progress display."""
    if not job.done:
        job.cancel()
    try:
        wm.event_timer_remove(timer)
        wm.progress_end()
        wm.gagavatar_job.running = False
    except ReferenceError:  # the window manager is gone (Blender is quitting)
        pass


def unregister() -> None:
    """Cancel the running job and remove its timer (Blender removes the modal handler with the operator class)."""
    while _modal:
        _stop(*_modal.pop())

"""What macOS lets this program do with the mouse, asked before it fails silently.

macOS gives a program global mouse events (pynput's listener: the click oracle) and lets it
move the pointer (`run --move-cursor`) only when the user has allowed the terminal or app it
runs in under System Settings > Privacy & Security > Accessibility. Without that, pynput
neither raises nor warns: the listener's event tap is refused and the pointer stays put. The
Accessibility API's own question (HIServices, which pynput's macOS dependencies bring) says
so up front. It is asked with the prompt option: plain `AXIsProcessTrusted` never shows
macOS's dialog nor lists the terminal under Accessibility, so the user had to find and add
it by hand. Elsewhere there is nothing to ask.
"""

from __future__ import annotations

import sys

ALLOW = (
    "allow the terminal (or the Python) that runs gazeloop in System Settings > Privacy & "
    "Security > Accessibility and > Input Monitoring, then start it again"
)


def accessibility_trusted(platform: str | None = None) -> bool | None:
    """True or False on macOS (whether this process may watch and move the mouse), None
    where the question does not arise or cannot be asked."""
    if (platform or sys.platform) != "darwin":
        return None
    try:
        import HIServices  # pyobjc-framework-ApplicationServices, a pynput dependency on macOS
    except ImportError:
        return None
    ask = getattr(HIServices, "AXIsProcessTrustedWithOptions", None)
    prompt = getattr(HIServices, "kAXTrustedCheckOptionPrompt", None)
    if ask is None or prompt is None:  # an older pyobjc: the question without the dialog
        return bool(HIServices.AXIsProcessTrusted())
    # Not yet trusted: macOS shows its dialog and lists this program, switched off.
    return bool(ask({prompt: True}))


def no_pointer(what: str, e: ImportError) -> str:
    """One line for pynput failing to import: not installed, or (installed) no desktop to
    reach, whose own text runs over several lines of advice; its first line says which."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{what} needs pynput and a desktop session: {first}"

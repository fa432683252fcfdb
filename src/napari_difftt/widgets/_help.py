"""The Help tab: what the parameters mean, where to read more, the shortcuts, and the one-time
choice of this plugin as napari's reader for NIfTI files.

Why napari asks which reader to use for ``.nii``/``.nii.gz``: its builtin reader claims those
extensions too (through imageio, which has no NIfTI backend, hence "Could not find a backend"),
and with two candidates and no saved preference napari shows its "Choose reader" dialog, whose
first (pre-selected) entry is the alphabetically first display name, "napari builtins". An npe2
manifest has no reader priority, so the plugin cannot win by itself; :func:`prefer_our_reader`
saves the preference napari's own dialog saves ("Remember this choice"), on request only.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from ._shortcuts import help_html

__all__ = ["NIFTI_PATTERNS", "PLUGIN", "HelpWidget", "help_text", "prefer_our_reader"]

PLUGIN = "napari-difftt"
NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
# README sections (GitHub-style anchors of its headings)
README_SECTIONS = {
    "What you can do in napari": "what-you-can-do-in-napari",
    "Command line (no GUI)": "command-line-no-gui",
    "As a library": "as-a-library",
    "Results and benchmarks": "results-and-benchmarks",
}

TOPICS = (
    ("The shape prior (Shape prior tab)",
     "p(x) = exp(−(d²)^β · ln 2) with d² = (x − μ)ᵀ Σ⁻¹ (x − μ): <b>μ</b> is the centre "
     "(mm), <b>Σ</b> the covariance, and p = ½ on the ellipsoid d = 1, whose semi-axes are "
     "the radii r; 'rotate' turns the axis radii into a full Σ. <b>β</b> is the "
     "shape exponent: 1 is a Gaussian, larger is flatter with a sharper edge. 'show preview' "
     "draws the prior and its ½ contour; any change shows them and makes this the prior Run "
     "model uses for the image; Reset goes back to the checkpoint's own prior."),
    ("The flow (Flow explorer tab)",
     "The network predicts <b>T pieces</b> v₁ … v_T (Train: 'pieces T'); each is integrated "
     "by scaling and squaring and BCH combines them into one velocity z, so Φ = exp(z) warps "
     "the prior into the segmentation. The default 'stationary' path exp(t·z) ends exactly at "
     "Φ (t = 1 is the segmentation on screen); 'piecewise' plays v₁ … v_T in turn and ends "
     "near Φ (the status says how near)."),
    ("Prior options (Train tab)",
     "Which prior parameters learn with the network: <b>fixed</b> (none), <b>mean</b> (μ), "
     "<b>sigma</b> (μ and one overall scale of Σ), <b>diag</b> (μ and the radii along the "
     "prior's axes) or <b>full</b> (μ and the whole covariance); 'train β' also learns β."),
    ("The topology report (Run model tab)",
     "Folds: the share of voxels with det J ≤ 0, by central differences (as published tables) "
     "and by the stricter digital test; a diffeomorphism has none. Components: connected "
     "pieces of the segmentation at face (6) and full (26) connectivity; the prior is one "
     "piece, so one is expected. The Jacobian tab maps log₂ det J (green expands, pink "
     "compresses) and draws folds in yellow."),
    ("Opening NIfTI files",
     "napari's own reader also claims .nii/.nii.gz and fails on them, so on a drop napari asks "
     "which reader to use with 'napari builtins' pre-selected: choose 'napari-difftt' and tick "
     "'Remember this choice', or press the button below once (Preferences ▸ Plugins lists and "
     "resets saved readers)."),
)


def help_text() -> str:
    """The Help tab as rich text: topics, links, shortcuts."""
    topics = "".join(f"<p><b>{title}</b><br>{text}</p>" for title, text in TOPICS)
    return f"{topics}<p><b>Read more</b><br>{_links()}</p>{help_html()}"


def prefer_our_reader() -> dict[str, str]:
    """Make napari open ``*.nii``/``*.nii.gz`` with this plugin's reader without asking (the
    preference napari's reader dialog saves); returns the saved associations."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader,
                                **dict.fromkeys(NIFTI_PATTERNS, PLUGIN)}
    return dict(plugins.extension2reader)


def our_reader_is_preferred() -> bool:
    """True when napari already opens both NIfTI patterns with this plugin."""
    from napari.settings import get_settings

    saved = get_settings().plugins.extension2reader
    return all(saved.get(pattern) == PLUGIN for pattern in NIFTI_PATTERNS)


class HelpWidget(QWidget):
    """The Help tab: :func:`help_text` and the "open NIfTI files with napari-difftt" button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QLabel(help_text())
        self.text.setWordWrap(True)
        self.text.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.text.setOpenExternalLinks(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.reader_button = QPushButton("Open .nii/.nii.gz with napari-difftt")
        self.reader_button.setToolTip("Save napari's reader preference for *.nii and *.nii.gz: "
                                      "no 'Choose reader' dialog on a drop")
        self.reader_status = QLabel()
        self.reader_status.setWordWrap(True)
        self.reader_button.clicked.connect(self.prefer_reader)
        layout = QVBoxLayout(self)
        layout.addWidget(self.reader_button)
        layout.addWidget(self.reader_status)
        layout.addWidget(self.text)
        layout.addStretch(1)
        self._show_reader_state()

    def prefer_reader(self) -> None:
        """Save the reader preference (the button) and say so."""
        prefer_our_reader()
        self._show_reader_state()

    def _show_reader_state(self) -> None:
        preferred = our_reader_is_preferred()
        self.reader_button.setEnabled(not preferred)
        self.reader_status.setText(
            "NIfTI files open with napari-difftt (Preferences ▸ Plugins to change)." if preferred
            else "napari will ask which reader to use for NIfTI files until you choose.")


def _links() -> str:
    """Links to the model card (shipped with the package) and the README's sections (in a
    source checkout; otherwise named)."""
    from .._resources import resource_path

    card = resource_path("MODEL_CARD.md")
    parts = [f'<a href="{card.as_uri()}">the bundled models\' card (MODEL_CARD.md)</a>']
    readme = Path(__file__).resolve().parents[3] / "README.md"
    for title, anchor in README_SECTIONS.items():
        if readme.is_file():
            parts.append(f'<a href="{readme.as_uri()}#{anchor}">README: {title}</a>')
        else:
            parts.append(f"README: {title}")
    return "<br>".join(parts)

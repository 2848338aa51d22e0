"""Host-side consumers of a sweep: progress bar and table, TensorBoard logs, PNG plots."""

from jaxtune.report import figures as figures
from jaxtune.report import plots as plots
from jaxtune.report import progress as progress
from jaxtune.report import tensorboard as tensorboard
from jaxtune.report.plots import write_plots as write_plots
from jaxtune.report.progress import ProgressBar as ProgressBar
from jaxtune.report.progress import format_table as format_table
from jaxtune.report.tensorboard import TensorBoardLogger as TensorBoardLogger

__all__ = [
    "ProgressBar",
    "TensorBoardLogger",
    "figures",
    "format_table",
    "plots",
    "progress",
    "tensorboard",
    "write_plots",
]

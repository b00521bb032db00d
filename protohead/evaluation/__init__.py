"""Transfer evaluation: frozen features -> tuned logistic regression -> log-odds.

The protocol of Sariyildiz et al., "No Reason for No Supervision: Improved Generalization in
Supervised Models" (ICLR 2023): extract pooled features of a frozen backbone on each transfer
dataset (:mod:`~protohead.evaluation.features`, cached on disk), tune an L2-regularised
multinomial logistic regression on a stratified validation split (:mod:`~.search`,
:mod:`~.logreg`), report test top-1 and its log-odds per dataset and their mean
(:mod:`~.metrics`, :mod:`~.report`). Command line: ``python -m protohead.evaluation``, whose
input follows the evaluated model (:mod:`~.sources`).
"""

from protohead.data.errors import DatasetUnavailableError
from protohead.data.fashion_mnist import FashionMNIST
from protohead.data.image_list import ImageListDataset
from protohead.evaluation.cache import FeatureCache, model_checksum
from protohead.evaluation.datasets import (
    DATASET_GROUPS,
    DATASETS,
    EXPECTED_COUNTS,
    INATURALIST_DATASETS,
    PAPER_DATASETS,
    DatasetOptions,
    TransferDataset,
    build_dataset,
    image_folder_pair,
    image_list_pair,
)
from protohead.evaluation.features import TransformConfig, cached_features, extract_features
from protohead.evaluation.inaturalist import CocoJsonImages, inaturalist_pair
from protohead.evaluation.loading import (
    TrainingRecord,
    UnreadableCheckpointError,
    checkpoint_task_top1,
    load_backbone,
    load_checkpoint_backbone,
    read_training_record,
)
from protohead.evaluation.logreg import LogisticRegression
from protohead.evaluation.metrics import LOG_ODDS_EPS, log_odds
from protohead.evaluation.plot import TradeoffPoint, plot_tradeoff, plot_transfer
from protohead.evaluation.report import (
    DatasetResult,
    TransferReport,
    format_table,
    read_json,
    write_json,
)
from protohead.evaluation.search import (
    ProbeResult,
    SearchConfig,
    SeedResult,
    linear_probe,
    refine_search,
)
from protohead.evaluation.splits import per_class_split, stratified_split

__all__ = [
    "DATASETS",
    "DATASET_GROUPS",
    "EXPECTED_COUNTS",
    "INATURALIST_DATASETS",
    "LOG_ODDS_EPS",
    "PAPER_DATASETS",
    "CocoJsonImages",
    "DatasetOptions",
    "DatasetResult",
    "DatasetUnavailableError",
    "FashionMNIST",
    "FeatureCache",
    "ImageListDataset",
    "LogisticRegression",
    "ProbeResult",
    "SearchConfig",
    "SeedResult",
    "TradeoffPoint",
    "TrainingRecord",
    "TransferDataset",
    "TransferReport",
    "TransformConfig",
    "UnreadableCheckpointError",
    "build_dataset",
    "cached_features",
    "checkpoint_task_top1",
    "extract_features",
    "format_table",
    "image_folder_pair",
    "image_list_pair",
    "inaturalist_pair",
    "linear_probe",
    "load_backbone",
    "load_checkpoint_backbone",
    "log_odds",
    "model_checksum",
    "per_class_split",
    "plot_tradeoff",
    "plot_transfer",
    "read_json",
    "read_training_record",
    "refine_search",
    "stratified_split",
    "write_json",
]

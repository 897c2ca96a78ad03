"""Default settings shared by every lr_jax config file in configs/ (the paper's setup).

The typed, checked view of these sections is `lr_jax.method.settings`."""
import ml_collections

from lr_jax import editors


def base_config() -> ml_collections.ConfigDict:
  """The paper's MaskGIT setup at ImageNet-256 with the official weights."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # "official": real weights (downloaded on first use); "tiny": small random
  # models built offline, for tests, CI and smoke runs.
  c.models = "official"

  # The generator (lr_jax/editors/<name>.py) and its own config sections; configs
  # pick another with editors.use(c, name).
  editors.use(c)

  c.dino = ml_collections.ConfigDict()
  c.dino.repo = "facebook/dino-vitb16"   # hub id or local directory

  c.clip = ml_collections.ConfigDict()
  c.clip.repo = "openai/clip-vit-base-patch16"

  c.region = ml_collections.ConfigDict()
  c.region.num_anchors = 4                          # K
  c.region.sizes = (3, 5, 7, 9, 11, 13, 15)         # M = 7 square sides, tokens
  c.region.roi_size = 7
  c.region.sampling_ratio = 2
  c.region.canvas = "pad"       # keep the aspect ratio, pad to the square ("squeeze": stretch)
  c.region.window = "auto"      # re-edit the kept box in a window of the original: auto/on/off
  c.region.window_scale = 2.0   # window side = this x the box's longer side

  c.rgn = ml_collections.ConfigDict()
  c.rgn.conv_features = (256, 128)
  c.rgn.dense_features = 256

  c.selection = ml_collections.ConfigDict()
  c.selection.estimator = "straight_through"   # or "expected"
  c.selection.tau = 1.0

  c.loss = ml_collections.ConfigDict()   # one weight per term of losses.TERMS (Eq. 3)
  c.loss.clip = 1.0
  c.loss.dir = 1.0
  c.loss.structure = 1.0
  c.loss.num_views = 0      # >0: guidance/direction averaged over random crops of each edit

  c.score = ml_collections.ConfigDict()
  c.score.alpha = 2.0
  c.score.beta = 1.0
  c.score.top_t2i = 0       # >0: best S among the top-N by S_t2i (the official code: 3)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8

  c.data = ml_collections.ConfigDict()
  c.data.manifest = ""      # JSON/CSV manifest of (image, prompt[, source_prompt])
  c.data.image_dir = ""     # or a folder of images ...
  c.data.prompt = ""        # ... edited with this one prompt
  # With neither set: True trains on the shipped sample (lr_jax.samples: the
  # scikit-image cat "chelsea" edited into "a lion" and "cat face").
  c.data.samples = False
  # A prompt that names no ImageNet class is mapped to the nearest class name by
  # CLIP; below this cosine similarity it is an error instead (<= -1: never).
  c.data.min_class_similarity = -1.0

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 5
  c.train.batch_size = 1
  c.train.max_steps = -1           # stop after this many steps (-1: all epochs)
  c.train.log_every = 1
  c.train.checkpoint_every = 10
  c.train.max_to_keep = 3

  c.infer = ml_collections.ConfigDict()
  c.infer.refine_steps = 0         # per-image RGN refinement before editing
  c.infer.max_edits_per_device = 0   # memory cap: candidates one device edits at once (0: all)
  return c

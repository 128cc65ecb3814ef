"""Everything about pairs before they reach the model: preparing (Stanford Dogs, the toy set), importing and
exporting (Hugging Face datasets), writing and fetching shards, checking, reading (a folder or shards), the latent
cache and the loader. `pairs/` is the on-disk format below it; `training.common` the lock and the stop signals.
Nothing here imports the run (settings, plan, events, checkpoints)."""

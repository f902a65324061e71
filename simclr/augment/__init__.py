"""Views, batched on the device: the per-sample random ops of the SimCLR recipe
(:mod:`~simclr.augment.ops`), the crop geometry and resampling (:mod:`~simclr.augment.crop`),
and groups of views of several sizes (:mod:`~simclr.augment.views`). Every random draw is a pure
function of a generator's seed."""

"""Views, batched on the device: the per-sample random ops of the SimCLR recipe
(`ops`), the crop geometry and resampling (`crop`),
and groups of views of several sizes (`views`). Every random draw is a pure
function of a generator's seed."""

"""The end-to-end demos behind ``pdiff-hf demo``: the MNIST-1D demo (:mod:`.demo`) and the conditional demo with its
report (:mod:`.conditional_demo`, :mod:`.conditional_report`)."""

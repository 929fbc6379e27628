"""Models (config group `model/`): plain nn.Modules, called functionally by the algorithms.

Every constructor takes `input_shape` and `num_outputs` from the task family."""

"""Attribution: gradients, groupings, executors, the methods, and the pipeline of one request."""

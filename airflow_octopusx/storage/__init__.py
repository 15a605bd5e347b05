"""Files on a worker's disk or in object storage: the inputs read for a request, the videos written."""

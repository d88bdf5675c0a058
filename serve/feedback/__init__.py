"""POST /v1/feedback: a client's judgement of one answer it got, joined to the captured request."""

"""Ray plumbing: starting a head (`cluster`, `head`), its Jobs API (`client`), submitting jobs (`submit`)."""

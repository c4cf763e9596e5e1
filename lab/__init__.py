"""Research off the method's road: experiments, controls, probes, paired statistics, pictures."""

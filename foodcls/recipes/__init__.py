"""The shipped recipes (configs/*.yaml in a checkout, where configs/ links here): package data, so that a
wheel install can write them out with `foodcls init`."""

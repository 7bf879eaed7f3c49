"""The Streamlit app's shared UI pieces (choices kept across pages, cached loaders, job
progress). UI only: every number comes from gda_core, every chart from gda_core.viz."""

"""The Streamlit explorer. Populated by the explore issue."""

"""The shoggoth explorer (Streamlit): `shoggoth explore --db FILE` runs this script.

Every view is deep-linkable: /feature?sae=S&feature=F, /personas?persona=P, /sql?query=...
"""

from __future__ import annotations

import streamlit as st

from shoggoth.explorer.common import db_path, end_run, md
from shoggoth.explorer.store import check_database

st.set_page_config(page_title="shoggoth explorer", page_icon="🎭", layout="wide")

problem = check_database(db_path())
if problem is not None:

    def missing() -> None:
        st.title("shoggoth explorer")
        st.warning(md(problem))

    st.navigation([st.Page(missing, title="No database", url_path="missing")]).run()
else:
    st.sidebar.caption(f"database: {md(db_path())}")
    page = st.navigation(
        [
            st.Page("views/overview.py", title="Overview", url_path="overview", default=True),
            st.Page("views/features.py", title="Features", url_path="features"),
            st.Page("views/feature.py", title="Feature", url_path="feature"),
            st.Page("views/personas.py", title="Personas", url_path="personas"),
            st.Page("views/search.py", title="Search", url_path="search"),
            st.Page("views/sql.py", title="SQL", url_path="sql"),
            st.Page("views/map.py", title="Feature map", url_path="map"),
        ]
    )
    try:
        page.run()
    finally:
        end_run()  # no lock is held between page runs: writers are not blocked

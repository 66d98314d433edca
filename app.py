"""Streamlit demo over dlcv.service: `streamlit run app.py`. The pages live in app_pages/ (st.navigation)."""

import streamlit as st

st.set_page_config(page_title="dlcv demo", layout="wide")

pages = [
    st.Page("app_pages/overview.py", title="Overview", default=True),
    st.Page("app_pages/faces.py", title="Faces"),
    st.Page("app_pages/digits.py", title="Digits"),
    st.Page("app_pages/adaptation.py", title="Adaptation"),
    st.Page("app_pages/results.py", title="Results"),
]
st.navigation(pages).run()

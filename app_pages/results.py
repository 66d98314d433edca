"""Results: the grading report ($DLCV_REPORT, else runs/grading/report.md) when there is one, and the tables of
RESULTS.md by section (the prose and commands stay in the file)."""

import streamlit as st

from app_pages import common
from dlcv import service

common.sidebar()
st.title("Results")
report = service.report_path()
if report.is_file():
    st.subheader("Grading report")
    st.caption(f"`{report}`")
    st.markdown(report.read_text())
    st.download_button("Report (Markdown)", report.read_bytes(), report.name, "text/markdown",
                       icon=":material/download:")
else:
    st.info(f"No grading report at {report}: `bash grading/hw_run.sh OUT` then `python -m grading.score OUT` "
            "writes one (or point $DLCV_REPORT at a report.md).", icon=":material/info:")
measured = service.results_path()
sections = service.markdown_tables(measured.read_text()) if measured.is_file() else []
if sections:
    st.subheader("Measured results")
    st.caption("Every table of RESULTS.md; the file gives the command behind each figure.")
    for i, (heading, tables) in enumerate(sections):
        with st.expander(heading or "results", expanded=i == 0):
            for table in tables:
                st.markdown(table)

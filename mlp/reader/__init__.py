"""Reading digits in people's images: preprocessing, prediction, export and the web app."""
